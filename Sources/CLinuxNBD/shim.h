// Kernel uapi headers for the NBD device and generic netlink; the constants come from them, not by hand.
#include <linux/netlink.h>
#include <linux/genetlink.h>
#include <linux/nbd.h>
#include <linux/nbd-netlink.h>
