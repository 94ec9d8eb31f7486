# syntax=docker/dockerfile:1
# abgate: one image for the router and the model servers (the subcommand picks).
#
#   docker build -t abgate:local .
#   docker run --rm -p 8080:8080 abgate:local                  # whole stack (`up`)
#   docker run --rm -p 6001:6001 abgate:local model-server --config /app/config/best_model.toml
#
# compose.yaml runs the three processes as three containers from this image.

# ---------------------------------------------------------------- build stage
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds (BuildKit);
# the binary is copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin abgate \
    && install -D -m 0755 target/release/abgate /out/abgate

# ---------------------------------------------------------------- runtime stage
FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 abgate \
    && useradd --system --uid 10001 --gid abgate --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin abgate
WORKDIR /app
COPY --from=builder /out/abgate /app/abgate
COPY config/ /app/config/
COPY models/ /app/models/
COPY data/ /app/data/
USER abgate
EXPOSE 8080 6001 6002
# Default: the router's health. compose.yaml overrides it for the model servers.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/app/abgate", "healthcheck", "--url", "http://127.0.0.1:8080/api/health"]
ENTRYPOINT ["/app/abgate"]
# The whole local stack (router + both model servers) in one container; compose.yaml
# runs `router` and `model-server` in separate containers instead.
CMD ["up", "--config-dir", "/app/config"]
