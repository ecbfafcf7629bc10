# Multi-stage build: compile with the full toolchain, ship only the (stripped) binary on a slim
# base. The build stage copies everything Cargo.toml names (the bench under benches/, the bench
# helpers under bench/, the examples), or cargo refuses the manifest; tests/deploy.rs checks that
# by resolving the manifest from exactly these paths.
FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
COPY bench ./bench
COPY examples ./examples
RUN cargo build --release --locked --bin outboxd

FROM debian:bookworm-slim
# What the binary links (librdkafka's TLS and compression) and the CAs Kafka TLS trusts by default.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 zlib1g ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /var/lib/outboxd --create-home outboxd
COPY --from=build /src/target/release/outboxd /usr/local/bin/outboxd
COPY config/outboxd.toml /etc/outboxd/outboxd.toml
USER outboxd
WORKDIR /var/lib/outboxd
ENV OUTBOXD_CONFIG=/etc/outboxd/outboxd.toml \
    OUTBOXD_HTTP__LISTEN=0.0.0.0:9187 \
    OUTBOXD_SINK__LOG__DIR=/var/lib/outboxd/log
EXPOSE 9187
VOLUME ["/var/lib/outboxd"]
ENTRYPOINT ["outboxd"]
CMD ["run"]
