"""One parallel computation at a time, process-wide.

Every parallel kernel already spreads over all of Numba's threads. Two Python threads (a thread pool, or
TensorFlow running two ``numpy_function`` ops at once) each launching them would put twice as many busy
threads on the cores (oversubscription: both slow down), and Numba's ``workqueue`` threading layer, the
fallback where neither OpenMP nor TBB is present, aborts the process on concurrent launches. So the public
entry points hold :data:`PARALLEL` around each image's work; other Python threads keep running Python code
meanwhile (the kernels release the GIL) and take their turn image by image.
"""

import threading

#: Re-entrant, so that an entry point may call another (``meanfield`` builds ``Lattice`` objects).
PARALLEL = threading.RLock()
