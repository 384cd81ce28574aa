"""`python -m cubelab.supervise CONFIG`: the embedded stack's supervisor, which `cubelab up` starts.

Its own entry module: running `-m cubelab.backends.local.supervisor` would import that module twice (the
package imports it first), which runpy warns about.
"""

from cubelab.backends.local.supervisor import main

if __name__ == "__main__":
    main()
