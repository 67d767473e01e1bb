"""Code that runs in the caller's process: the REST client and the SGLang frontend backend."""
