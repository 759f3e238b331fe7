# The `prism` command in a small image, for docker-compose.yml (services run under the
# `prism register` sidecar; python3 provides a stand-in HTTP server for the examples).
FROM rust:1.95 AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p prism-cli

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/prism /usr/local/bin/prism
ENTRYPOINT ["prism"]
