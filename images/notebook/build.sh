#!/bin/bash
# Builds what images/notebook/Dockerfile copied to /tmp into the image: `build.sh conda` or `build.sh venv`.
# Both put the server side in /opt/conda, a kernel per /tmp/kernels/*/environment.yml in
# /opt/conda/envs/cubelab-NAME with the toolkit and a kernelspec in /opt/conda/share/jupyter/kernels, and the
# notebooks in /home/jovyan. PIP_CONSTRAINT (mlflow's version), TORCH_INDEX and UV_ARGS come from the build.
set -euo pipefail

mode="${1:?usage: build.sh conda|venv}"
prefix=/opt/conda
kernels=/tmp/kernels

log() { echo "[cubelab-notebook] $*"; }

# The value of a top-level key of an environment.yml (display_name, conda_only).
field() { sed -n "s/^$2: *\"\{0,1\}\([^\"]*\)\"\{0,1\} *\$/\1/p" "$1"; }

server_conda() {
    pip install --no-cache-dir --requirement /tmp/requirements.txt
}

server_venv() {
    python3 -m venv "${prefix}"
    # uv for the kernels, in a venv of its own that the image does not keep (version: deploy/pyproject.toml).
    uv_version="$(sed -n 's/^ *"uv==\([^"]*\)".*/\1/p' /tmp/cubelab/pyproject.toml)"
    python3 -m venv /tmp/uv && /tmp/uv/bin/pip install --quiet --no-cache-dir "uv==${uv_version}"
    # A uv cache mounted at /uv-cache (podman build --volume) is used and kept out of the image; else none.
    if [ -d /uv-cache ]; then export UV_CACHE_DIR=/uv-cache UV_LINK_MODE=copy; else export UV_NO_CACHE=1; fi
    # shellcheck disable=SC2086  # UV_ARGS holds several options
    /tmp/uv/bin/uv pip install --python "${prefix}/bin/python" --constraint "${PIP_CONSTRAINT}" \
        --index-strategy unsafe-best-match ${UV_ARGS:-} \
        --requirement /tmp/requirements.txt
    # docker-stacks' user and entry point name: jupyterhub-singleuser under a hub, JupyterLab alone otherwise.
    getent group 100 >/dev/null || groupadd --gid 100 users
    id jovyan >/dev/null 2>&1 || useradd --uid 1000 --gid 100 --create-home --shell /bin/bash jovyan
    printf '%s\n' '#!/bin/sh' \
        'if [ -n "${JUPYTERHUB_API_TOKEN:-}" ]; then exec jupyterhub-singleuser "$@"; fi' \
        'exec jupyter lab --ip=0.0.0.0 "$@"' > /usr/local/bin/start-notebook.py
    chmod 755 /usr/local/bin/start-notebook.py
}

kernel_conda() {  # name spec env
    PIP_EXTRA_INDEX_URL="${TORCH_INDEX}" mamba env create --yes --quiet --prefix "$3" --file "$2"
    "$3/bin/pip" install --no-cache-dir /tmp/kernels/toolkit
}

kernel_venv() {  # name spec env
    local lock="/tmp/locks/kernel-$1.txt"
    [ -f "${lock}" ] || { echo "no lock file ${lock} for kernel $1 (python -m cubelab.locks)" >&2; exit 1; }
    python3 -m venv "$3"
    # shellcheck disable=SC2086  # UV_ARGS holds several options
    /tmp/uv/bin/uv pip sync --python "$3/bin/python" --require-hashes \
        --index-strategy unsafe-best-match ${TORCH_INDEX:+--extra-index-url "${TORCH_INDEX}"} ${UV_ARGS:-} "${lock}"
    # shellcheck disable=SC2086
    /tmp/uv/bin/uv pip install --python "$3/bin/python" --index-strategy unsafe-best-match ${UV_ARGS:-} \
        --no-deps /tmp/kernels/toolkit
}

"server_${mode}"
pip install --no-cache-dir --no-deps /tmp/cubelab  # TensorBoard proxy and sync (the control plane is not used)

for spec in "${kernels}"/*/environment.yml; do
    name="$(basename "$(dirname "${spec}")")"
    env="${prefix}/envs/cubelab-${name}"
    if [ "${mode}" = venv ] && [ "$(field "${spec}" conda_only)" = "true" ]; then
        log "kernel ${name}: conda-forge only, not in the venv build"
        continue
    fi
    log "kernel ${name} (${mode})"
    "kernel_${mode}" "${name}" "${spec}" "${env}"
    "${env}/bin/python" -c "import cubelab_toolkit.compat as c; c.write_pth()"
    "${env}/bin/python" -m ipykernel install --prefix "${prefix}" --name "cubelab-${name}" \
        --display-name "$(field "${spec}" display_name)"
done

# Every notebook of kernels/ (each kernel's, and kernels/deepesdl's compatibility notebooks), side by side in
# the home: a folder named like a package (tensorflow/, sklearn/) there would shadow it for a kernel started in
# the home.
mkdir -p /home/jovyan/work
cp "${kernels}"/*/*.ipynb /home/jovyan/

rm -rf /tmp/uv /root/.cache/pip
if [ "${mode}" = conda ]; then
    mamba clean --all --yes
    fix-permissions /opt/conda /home/jovyan
else
    chown -R 1000:100 /home/jovyan
fi
log "done: $(ls "${prefix}/share/jupyter/kernels" | tr '\n' ' ')"
