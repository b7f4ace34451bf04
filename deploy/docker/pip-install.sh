#!/bin/sh
# pip install inside the image build (deploy/docker/Dockerfile), with the builder's own pip
# settings where given as BuildKit secrets, which are mounted for one RUN and never stored in a
# layer or the build history:
#   --secret id=pip_cert,src=<CA bundle>   the CA certificates of a TLS-inspecting proxy or a
#                                          private index (becomes PIP_CERT)
#   --secret id=pip_conf,src=<pip.conf>    a pip configuration file: index URLs with credentials,
#                                          trusted hosts (becomes PIP_CONFIG_FILE)
# Build arguments named PIP_* (PIP_INDEX_URL, ...) reach pip as its environment variables.
set -eu
if [ -s /run/secrets/pip_cert ]; then
  export PIP_CERT=/run/secrets/pip_cert
fi
if [ -s /run/secrets/pip_conf ]; then
  export PIP_CONFIG_FILE=/run/secrets/pip_conf
fi
exec python -m pip install "$@"
