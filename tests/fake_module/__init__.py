"""A module the kernel has never heard of: tests/test_modules.py adds it to the list to show one line installs it."""
