"""The worker room: scheduler + engine in their own process, driven over ZMQ."""
