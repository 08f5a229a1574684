"""The nftables ruleset: rendered from the config (pure), then loaded atomically.

nfguard owns one table, `inet nfguard`. Where the kernel lacks nft's native `queue`
expression, the single queue step goes through the xt NFQUEUE target with iptables-nft
(one rule per family, tagged with a comment so uninstall removes exactly it).

The text is rendered by `ruleset` from the parts it is made of (`meters`, `onetrip`,
`forward`, `shapes`, `counters`; `xt` for the xt path's rules); `installer` loads and
removes it, `counters` reads its counters back. What they all share is named here.
"""

TABLE = "nfguard"
NATIVE = "native"
XT = "xt"
PATH_DESCRIPTIONS = {
    NATIVE: "native nft queue",
    XT: "xt NFQUEUE target via iptables-nft (this kernel has no nft queue expression)",
}
# The verdict chains run after iptables' security table, where the xt path's rules live
# (iptables-nft 1.8.9 gives it priority 150; the kernel's legacy security table hooks at
# 50), and after the filter table, so another firewall's drop comes first.
VERDICT_PRIORITY = 200
