"""mmserve's services; every process of the project (the gateway too) imports this package before
grpc.

gRPC's C core logs through absl straight to stderr, in its own format, beside the services' JSON
lines; at absl's default level it writes an INFO line for every failed TLS handshake, so a port
scan fills the log. Its errors still show. GRPC_VERBOSITY set in the environment wins; it has to
be set before grpc initialises, hence here.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
