# syntax=docker/dockerfile:1
# The syntax line pins a Dockerfile frontend that supports RUN --mount (BuildKit cache mounts).

# ---- builder ---------------------------------------------------------------------------
# Same Debian release as the runtime stage, so the binary links against the glibc it will
# run with. The slim Rust image already ships gcc and libc6-dev, which is all the C code
# here needs (zstd, bundled SQLite, ring); nothing links OpenSSL, so no pkg-config/libssl-dev.
FROM rust:1.95-slim-bookworm AS builder

WORKDIR /app

# The whole workspace: cargo loads every member's manifest (and their declared targets)
# even when building one package. .dockerignore keeps target/, .git/ and local data out.
COPY . .

# Cache mounts keep the crate registry and compiled dependencies between builds, so a source
# change recompiles only the workspace crates. sharing=locked serialises parallel builds
# (compose builds app1 and app2 from this file) instead of letting them race on one target
# dir. The binary is copied out in the same RUN because the cache mount is not part of the
# image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/app/target,sharing=locked \
    cargo build --release --locked -p cachelayer-server --bin cachelayer \
    && cp /app/target/release/cachelayer /usr/local/bin/cachelayer

# ---- runtime ---------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: trust roots for rediss:// and TLS to PostgreSQL. Nothing else is needed
# at run time; the binary carries SQLite and its TLS stack.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed, non-root uid/gid, so volume permissions and Kubernetes runAsNonRoot checks do not
# depend on image build order. No home and no login shell: the process needs neither.
RUN groupadd --gid 10001 cachelayer \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin cachelayer \
    && mkdir -p /data \
    && chown 10001:10001 /data

COPY --from=builder /usr/local/bin/cachelayer /usr/local/bin/cachelayer

# The default DATABASE_URL (sqlite://cachelayer.db) is relative to the working directory,
# so it must be writable by the service user. Mount a volume here to keep the SQLite file
# across container restarts; with PostgreSQL nothing is written here.
WORKDIR /data

# 127.0.0.1 (the binary's default) is unreachable from outside a container.
ENV CACHELAYER_LISTEN=0.0.0.0:8000 \
    CACHELAYER_LOG_FORMAT=json

# Numeric, so the runtime can verify it is not root without reading /etc/passwd.
USER 10001:10001

EXPOSE 8000

# SIGTERM starts the graceful drain (bounded by --shutdown-timeout, 30 s by default). The
# binary handles SIGTERM/SIGINT itself and starts no child processes, so it can run as PID 1
# without an init such as tini.
STOPSIGNAL SIGTERM

# No HEALTHCHECK: the slim image has no curl or wget. Orchestrators should probe
# GET /health/live (liveness) and GET /health/ready (readiness, 503 until ready) directly.
# Exec form, so the signals above reach the binary and not a shell.
ENTRYPOINT ["/usr/local/bin/cachelayer"]
CMD ["serve"]
