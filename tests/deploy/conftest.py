"""The deploy tier: the Dockerfile, the Compose files and the Kubernetes manifests, checked without a Docker
engine or a cluster. It runs the real tools (hadolint, docker-compose config, kubectl kustomize,
kubernetes-validate, pip) in child processes and uses no Redis. `make deploy-check` installs the tools
and runs this tier with DEPLOY_CHECK_STRICT=1, where a missing tool fails instead of skipping."""
