# Multi-stage build: compile with the full toolchain, ship only the binary on a slim base.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked --bin outboxd

FROM debian:bookworm-slim
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
