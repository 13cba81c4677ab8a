"""Container runtimes that ``runtime.RuntimeProvider`` drives."""
