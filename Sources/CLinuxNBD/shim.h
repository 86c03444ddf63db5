// Kernel uapi headers for the NBD device and generic netlink; the constants come from them, not by hand.
#include <linux/netlink.h>
#include <linux/genetlink.h>
#include <linux/nbd.h>
#include <linux/nbd-netlink.h>

// The classic ioctl interface (linux/nbd.h). _IO() is a function-like macro Swift cannot import, so the
// request numbers are taken from the header here.
#include <sys/ioctl.h>
static const unsigned long iscsi_nbd_ioctl_set_sock = NBD_SET_SOCK;
static const unsigned long iscsi_nbd_ioctl_set_blksize = NBD_SET_BLKSIZE;
static const unsigned long iscsi_nbd_ioctl_set_size = NBD_SET_SIZE;
static const unsigned long iscsi_nbd_ioctl_do_it = NBD_DO_IT;
static const unsigned long iscsi_nbd_ioctl_clear_sock = NBD_CLEAR_SOCK;
static const unsigned long iscsi_nbd_ioctl_clear_que = NBD_CLEAR_QUE;
static const unsigned long iscsi_nbd_ioctl_disconnect = NBD_DISCONNECT;
static const unsigned long iscsi_nbd_ioctl_set_timeout = NBD_SET_TIMEOUT;
static const unsigned long iscsi_nbd_ioctl_set_flags = NBD_SET_FLAGS;
// ioctl is variadic; the NBD requests take an unsigned long (a size, a descriptor, a flag set) or nothing.
static inline int iscsi_nbd_ioctl(int fd, unsigned long request, unsigned long argument) {
    return ioctl(fd, request, argument);
}
