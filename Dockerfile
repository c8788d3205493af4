# syntax=docker/dockerfile:1
#
# submitd container image.
#
#   docker build -t submitd .
#   docker run -d -p 587:587 -p 465:465 \
#     -v /srv/submitd/etc:/etc/submitd:ro -v submitd-spool:/var/spool/submitd submitd
#
# Layout (matches config/submitd.toml, whose relative paths resolve against /etc/submitd):
#   /etc/submitd/submitd.toml      config
#   /etc/submitd/certs/cert.pem    certificate chain (PEM)
#   /etc/submitd/certs/key.pem     private key (PEM), readable by uid 10001
#   /etc/submitd/users.toml        users (`docker run ... submitd user add LOGIN --password-stdin
#                                  --config /etc/submitd/submitd.toml` with the volume writable)
#   /var/spool/submitd             queue, owned by submitd (uid 10001): mount a volume here
#
# The server runs as the non-root user submitd and binds 587 and 465: Docker (20.10+) sets
# net.ipv4.ip_unprivileged_port_start=0 in the container's network namespace, so no capability
# is needed. On other runtimes, listen on high ports and publish them as 587/465.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so that source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
# Make cargo notice the real sources are newer than the placeholder build.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

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
USER submitd
VOLUME ["/var/spool/submitd"]
EXPOSE 587 465
ENTRYPOINT ["/usr/local/bin/submitd"]
CMD ["serve", "--config", "/etc/submitd/submitd.toml"]
