"""Many replicas behind SGLang's router (issue 12): see docs/scale-out.md.

- ``envelope``: the replica side: stream operations carried on ``/generate``.
- ``gateway``: the cluster's public URL: our REST API, mapped onto the router.
- ``launch``: ``stream2llm cluster``: replicas + router + gateway, one command.
"""
