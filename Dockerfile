# Multi-stage: build with the Rust toolchain, ship one static-ish binary on a
# small non-root base. Build: docker build -t corridor:latest .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p corridor && strip target/release/corridor

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/corridor /corridor
USER 65532:65532
ENTRYPOINT ["/corridor"]
