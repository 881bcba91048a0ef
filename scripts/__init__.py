"""The project's scripts.

``scripts.stack`` forks service processes from launchers (``make run``, the benchmarks, the tests)
whose own gRPC channels are open. gRPC's fork handlers then run in the fork and can hang there
(a benchmark run stopped for good inside gRPC's pre-fork handler) or abort the child before its
exec. The children only exec, so the handlers are off in every process that imports this
package; it must happen before grpc initialises, so the benchmarks and the tests import this
package before anything else.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
