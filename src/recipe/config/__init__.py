"""Config schema, locating the shipped config dirs, composing and validating."""
