"""The thin command line over the library: each command calls one library function."""
