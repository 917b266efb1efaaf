#!/usr/bin/env bash
# Installs the OS packages the e2e test bed needs (host namespaces and the IPVS VM).
# Idempotent: does nothing when every package is already installed.
set -euo pipefail

pkgs=(iptables ipset conntrack iproute2 ipvsadm kmod cpio busybox-static qemu-system-x86
	haproxy curl ca-certificates)

missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("${p}")
	fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
	echo "install-deps: all packages present"
	exit 0
fi

sudo=""
if [[ "$(id -u)" -ne 0 ]]; then
	sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
${sudo} apt-get update
${sudo} apt-get install -y --no-install-recommends "${missing[@]}"
