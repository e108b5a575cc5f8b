"""The defaults of the schema's tunables, in a module light enough for every process to import.

:mod:`recipe.config.schema` declares them (it imports Hydra); the client, the limiter, the
factory and the runner take them from here, so a client built with nothing set behaves like a
run whose config sets nothing.
"""

TIMEOUT = 120.0  # backend.timeout: seconds for a whole attempt
NUM_RETRIES = 5  # backend.num_retries
MAX_CONCURRENCY = 16  # backend.max_concurrency: requests in flight per backend
BATCH_POLL_SECONDS = 30.0  # backend.batch_poll_seconds
THREADS_PER_WORKER = 2  # dask.threads_per_worker: partitions in flight per worker
LOCAL_CONTEXT_LENGTH = 2048  # the embedded llama.cpp server's context when model.context_length is null
