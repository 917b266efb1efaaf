#!/bin/sh
# /init of the svcproxy test VM: prepare a kernel that looks like a node's,
# run /vm/run.sh, report its exit code on the console, power off.
export PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
mkdir -p /run/netns /sys/fs/bpf
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
# Kernel module requests (iptables matches, nft expressions) go to busybox.
echo /sbin/modprobe >/proc/sys/kernel/modprobe

nonce=$(cat /vm/nonce 2>/dev/null)
echo "SVCPROXY-VM-INIT $nonce kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"

# One modprobe for all is several seconds faster under TCG than one each;
# only on failure go one by one to name the culprit.
if ! modprobe -a $(cat /etc/vm/modules); then
	for m in $(cat /etc/vm/modules); do
		modprobe "$m" || echo "vm-init: modprobe $m failed"
	done
fi

ip link set lo up
# qemu user networking: the host's 127.0.0.1 is reachable as 198.18.0.2.
ip link set eth0 up
ip addr add 198.18.0.15/24 dev eth0
ip route add default via 198.18.0.2 dev eth0
hostname svcproxy-vm

export SVCPROXY_VM=1 SVCPROXY_VM_HOST=198.18.0.2
cd /vm
echo "SVCPROXY-VM-PAYLOAD-START $nonce uptime=$(cut -d' ' -f1 /proc/uptime)"
sh /vm/run.sh </dev/null
rc=$?
sync
echo "SVCPROXY-VM-END $nonce rc=$rc"
poweroff -f
# poweroff only returns on failure; exiting /init then panics, and with
# panic=-1 and -no-reboot qemu still exits.
sleep 2
exit 1
