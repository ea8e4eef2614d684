# hoopy gateway: `hoopy serve` with config and state on volumes.
#
# Two stages: the first has a C compiler and builds hoopy's wheel with its compiled fast
# path (Cython, see hoopy/compiled.py) plus wheels of every dependency; the second is the
# slim runtime, which installs those wheels only (no compiler, no build tools in it).
# `docker run IMAGE --version` prints "fast path compiled (...)" when the build worked.

FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md setup.py ./
COPY hoopy ./hoopy
# The build must compile: a wheel without the fast path would run interpreted, slower.
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
 && python -c "import sys, zipfile, glob; \
w = glob.glob('/wheels/hoopy-*.whl')[0]; \
sys.exit(0 if any(n.endswith('.so') for n in zipfile.ZipFile(w).namelist()) \
else 'hoopy wheel has no compiled module')"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /var/lib/hoopy hoopy \
 && mkdir -p /etc/hoopy /var/lib/hoopy \
 && chown hoopy:hoopy /var/lib/hoopy
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index --find-links /tmp/wheels hoopy \
 && rm -rf /tmp/wheels /root/.cache \
 && hoopy --version
USER hoopy
VOLUME ["/etc/hoopy", "/var/lib/hoopy"]
EXPOSE 15432 12222 16443 18080
ENTRYPOINT ["hoopy", "serve", "--config", "/etc/hoopy/hoopy.yaml"]
