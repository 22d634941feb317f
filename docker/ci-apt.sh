#!/usr/bin/env bash
# Install the Debian tools that the tests need: docker-compose 1.29 (validates compose files offline,
# no engine) and prometheus 2.42 (promtool; the server binary for tests that start one themselves) for
# tests/deploy; mosquitto (MQTT broker) and postgresql (initdb/postgres for a throw-away cluster) for
# tests/records, which start their own instances on loopback ports.
# Idempotent and quiet: does nothing when the tools are there, prints apt's output only on failure.
#
# The prometheus, mosquitto and postgresql packages' postinst scripts start their daemons through invoke-rc.d (/etc/init.d/prometheus), also
# in a container without systemd, unless /usr/sbin/policy-rc.d forbids it. Tests must not find a stray
# server on :9090 (or :1883, :5432), so service starts are forbidden for the duration of the install, and a daemon that
# got started anyway is stopped.
set -euo pipefail

have_postgres() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
if command -v docker-compose >/dev/null && command -v promtool >/dev/null && command -v prometheus >/dev/null \
    && [ -x /usr/sbin/mosquitto ] && have_postgres \
    && command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null; then
    as_root=(sudo -n)
else
    echo "ci-apt.sh: need root (or sudo) to install docker-compose, prometheus, mosquitto and postgresql" >&2
    exit 1
fi

log="$(mktemp)"
policy=/usr/sbin/policy-rc.d
added_policy=0
cleanup() {
    if [ "$added_policy" -eq 1 ]; then "${as_root[@]}" rm -f "$policy"; fi
    rm -f "$log"
}
trap cleanup EXIT

# Exit status 101 = "action forbidden": invoke-rc.d and deb-systemd-invoke then skip the start.
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
    "${as_root[@]}" chmod 755 "$policy"
    added_policy=1
fi

run() {
    if ! "$@" >>"$log" 2>&1; then
        echo "ci-apt.sh: failed: $*" >&2
        cat "$log" >&2
        exit 1
    fi
}

# --no-install-recommends: skips docker.io (an engine we do not want) and prometheus-node-exporter.
run "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
run "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    docker-compose prometheus mosquitto postgresql

# Belt and braces: a daemon started despite the policy (e.g. on a systemd host) is stopped and disabled.
for daemon in prometheus mosquitto postgresql; do
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        "${as_root[@]}" systemctl disable --now "$daemon.service" >>"$log" 2>&1 || true
    elif [ -x "/etc/init.d/$daemon" ] && "${as_root[@]}" "/etc/init.d/$daemon" status >>"$log" 2>&1; then
        "${as_root[@]}" "/etc/init.d/$daemon" stop >>"$log" 2>&1 || true
    fi
done

docker-compose version --short >/dev/null
promtool --version >/dev/null 2>&1
/usr/sbin/mosquitto -h >/dev/null 2>&1 || [ $? -eq 3 ]  # `-h` prints the usage and exits 3
have_postgres

# Review station (tests/ui): a real headless browser and its WebDriver. Chromium starts no
# daemon; installed in its own step so that the list above stays as its owner keeps it.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    run "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver
fi
chromium --version >/dev/null 2>&1  # Debian's wrapper prints a harmless shell warning
chromedriver --version >/dev/null
