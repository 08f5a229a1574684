"""What the kernel and the exporter's sources give, as the metrics tests use them."""

# /proc/net/netfilter/nfnetlink_queue as the kernel prints it (seq_show's format).
NFQUEUE_TEXT = (
    "    0  23927     3 2  4016  1500    27       4100  1\n"
    "    5      0     0 2  4016     0     0          0  1\n"
)
