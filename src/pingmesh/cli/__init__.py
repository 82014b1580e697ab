"""The command line: the only package that prints; it calls ``asyncio.run()``."""
