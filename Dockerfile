# syntax=docker/dockerfile:1.7
# The one `tessera` image: every role is a command (`tessera shard`,
# `tessera router`, ...). Multi-arch without emulation: the build stage runs
# on the builder's own platform ($BUILDPLATFORM) and cross-compiles for the
# target with Debian's cross gcc; the web client's bundle (static files, the
# same for every platform) is built once, on the builder's platform too; the
# runtime stage only copies files, so no QEMU is needed for either
# architecture:
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/tessera:TAG --push .
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg FEATURES=fdb \
#       -t REGISTRY/tessera:TAG-fdb --push .          # with the FoundationDB backend
#
# docs/deploy.md has the details (loading an image into k3s without a registry).

# The toolchain the project is built and tested with (some locked crates need > 1.90).
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
# The node that builds the web client (client/web: esbuild wants >= 18).
ARG NODE_VERSION=20

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
ARG TARGETARCH
ARG BUILDARCH
# "fdb" builds the FoundationDB backend in (needs libfdb_c, fetched below).
ARG FEATURES=""
# libfdb_c's version; the FoundationDBCluster in k8s/base runs the same one.
ARG FDB_VERSION=7.3.63
WORKDIR /src
RUN set -eux; \
    case "$TARGETARCH" in \
      amd64) triple=x86_64-unknown-linux-gnu; gnu=x86_64-linux-gnu; debarch=amd64; fdbarch=amd64 ;; \
      arm64) triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; debarch=arm64; fdbarch=aarch64 ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH (amd64 or arm64)"; exit 1 ;; \
    esac; \
    pkgs="protobuf-compiler pkg-config libclang-dev clang curl"; \
    if [ "$TARGETARCH" != "$BUILDARCH" ]; then \
      pkgs="$pkgs gcc-$(echo $gnu | tr _ -) libc6-dev-$debarch-cross"; \
    fi; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*; \
    rustup target add "$triple"; \
    mkdir -p /opt/fdb/lib; \
    if [ "$FEATURES" = fdb ]; then \
      curl -fsSL -o /tmp/fdb.deb \
        "https://github.com/apple/foundationdb/releases/download/${FDB_VERSION}/foundationdb-clients_${FDB_VERSION}-1_${fdbarch}.deb"; \
      dpkg -x /tmp/fdb.deb /tmp/fdb; \
      cp /tmp/fdb/usr/lib/libfdb_c.so /opt/fdb/lib/; \
      rm -rf /tmp/fdb /tmp/fdb.deb; \
    fi; \
    printf '%s\n' "$triple" > /opt/triple; \
    printf '%s\n' "$gnu" > /opt/gnu
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=tessera-target-${TARGETARCH} \
    set -eux; \
    triple=$(cat /opt/triple); gnu=$(cat /opt/gnu); \
    upper=$(echo "$triple" | tr a-z- A-Z_); \
    export "CARGO_TARGET_${upper}_LINKER=${gnu}-gcc"; \
    export "CC_$(echo $triple | tr - _)=${gnu}-gcc"; \
    export BINDGEN_EXTRA_CLANG_ARGS="--target=${gnu} -I/usr/${gnu}/include"; \
    export RUSTFLAGS="-L /opt/fdb/lib"; \
    # A stripped release binary (symbols removed at link time).
    export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols; \
    features=""; if [ -n "$FEATURES" ]; then features="--features $FEATURES"; fi; \
    cargo build --release --locked --bin tessera --target "$triple" $features; \
    mkdir -p /out/bin /out/lib; \
    cp "target/$triple/release/tessera" /out/bin/tessera; \
    cp /opt/fdb/lib/. /out/lib/ -r

# The browser client (client/web -> dist/, what `scripts/build-web.sh`
# makes): HTML, JavaScript and CSS, the same for every target, so built once
# on the builder's platform. The lock file first, so a change to the sources
# alone reuses the installed packages (.dockerignore keeps the host's
# node_modules/ and dist/ out: their esbuild binary is the host's).
FROM --platform=$BUILDPLATFORM node:${NODE_VERSION}-${DEBIAN_RELEASE}-slim AS web
WORKDIR /web
COPY client/web/package.json client/web/package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-audit --no-fund --loglevel=error
COPY client/web/ ./
RUN node build.mjs

# The runtime: Debian slim (glibc, as the binary and libfdb_c expect).
# Nothing runs here at build time, so it needs no emulation.
FROM debian:${DEBIAN_RELEASE}-slim
COPY --from=build /out/bin/tessera /usr/local/bin/tessera
COPY --from=build /out/lib/ /usr/local/lib/
COPY worlds /usr/share/tessera/worlds
# The page routers serve to browsers (`--web-dir`, docs/deploy.md "Browser players").
COPY --from=web /web/dist /usr/share/tessera/web
ENV LD_LIBRARY_PATH=/usr/local/lib
# `--world worlds/default` (every role's default) resolves here.
WORKDIR /usr/share/tessera
# A numeric user that owns nothing: the pods also set runAsNonRoot.
USER 10001:10001
# telnet, QUIC (and WebTransport), the web client's page, cluster bus, metrics/health
EXPOSE 4000/tcp 4433/udp 8080/tcp 7000/udp 9100/tcp
ENTRYPOINT ["/usr/local/bin/tessera"]
# `docker run -p 4433:4433/udp -p 8080:8080 IMAGE` plays at http://localhost:8080/.
CMD ["up", "--data-dir", "/tmp/tessera-data", "--metrics", "0.0.0.0:9100", "--web-dir", "/usr/share/tessera/web"]
