"""The `stream2llm` subcommands that live in srt_ext (`serve`, `profile`)."""
