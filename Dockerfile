# syntax=docker/dockerfile:1
#
# submitd container image.
#
#   docker build -t submitd .
#   docker run -d --name submitd -p 587:587 -p 465:465 \
#     -v /srv/submitd/etc:/etc/submitd:ro -v submitd-spool:/var/spool/submitd submitd
#
# Layout (matches config/submitd.toml, whose relative paths resolve against /etc/submitd):
#   /etc/submitd/submitd.toml      config (volume; start from config/submitd.toml)
#   /etc/submitd/certs/cert.pem    certificate chain (PEM)
#   /etc/submitd/certs/key.pem     private key (PEM), readable by uid 10001
#   /etc/submitd/users.toml        users (`docker run --rm -i -v /srv/submitd/etc:/etc/submitd
#                                  submitd user add LOGIN --password-stdin --config
#                                  /etc/submitd/submitd.toml`, the volume writable)
#   /var/spool/submitd             queue, owned by uid 10001 (volume)
#
# Ports below 1024 as a non-root user: the binary carries the file capability
# cap_net_bind_service (set in the build stage; BuildKit, the default builder since Docker 23,
# keeps it through COPY --from). That needs NET_BIND_SERVICE in the container's bounding set
# (Docker's default set has it; with --cap-drop ALL add --cap-add NET_BIND_SERVICE) and no
# no-new-privileges (which disables file capabilities). The alternative needs no capability at
# all: `docker run --sysctl net.ipv4.ip_unprivileged_port_start=0 ...` (Docker 20.10+ already
# sets it in a container's own network namespace), or listen on high ports and publish them
# as 587/465 (what contrib/k8s/statefulset.yaml does).
#
# What is tested without a Docker engine: tests/container/run.sh builds the binary with the
# same cargo command as below, sets the same capability, lays out /etc/submitd and
# /var/spool/submitd in a temporary root, runs it as uid 10001 and checks the health command,
# a submission and SIGTERM. The image build itself is not tested here (no engine, no registry).

FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so that source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
# The build command is exactly the one CI runs (.ci/run, before tests/container/run.sh):
#   cargo build --release --locked
# `touch` makes cargo notice the real sources are newer than the placeholder build.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && setcap cap_net_bind_service=+ep target/release/submitd \
    && getcap target/release/submitd | grep -q cap_net_bind_service

# debian:bookworm-slim rather than distroless/cc: the same glibc as the build stage, Debian's
# ca-certificates (the smarthost's certificate is verified against them), and a shell plus
# getcap for whoever has to debug a running container. distroless/cc-debian12 works too (the
# binary needs only glibc and libgcc_s); it saves ~50 MB.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 submitd \
    && useradd --system --uid 10001 --gid submitd --home-dir /var/spool/submitd --shell /usr/sbin/nologin submitd \
    && install -d -m 0750 -o root -g submitd /etc/submitd /etc/submitd/certs \
    && install -d -m 0700 -o submitd -g submitd /var/spool/submitd
COPY --from=build /src/target/release/submitd /usr/local/bin/submitd
COPY --chown=root:submitd --chmod=0640 config/submitd.toml /etc/submitd/submitd.toml
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
VOLUME ["/etc/submitd", "/var/spool/submitd"]
EXPOSE 587 465
# `submitd health`: a 220 greeting on the first listen address within 5 s (PROXY v2 LOCAL
# header first when listen.proxy_protocol is on).
HEALTHCHECK --interval=30s --timeout=10s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/submitd", "health", "--config", "/etc/submitd/submitd.toml"]
ENTRYPOINT ["/usr/local/bin/submitd"]
CMD ["serve", "--config", "/etc/submitd/submitd.toml"]
