"""The target side's commands (torch-free): predict, verify, bench, build, serve, profiles."""
