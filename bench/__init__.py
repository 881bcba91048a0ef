import scripts  # noqa: F401 - before grpc initialises: gRPC's fork handlers off (see scripts/__init__.py)
