"""Model clients, conversation formatters and the local llama.cpp server."""
