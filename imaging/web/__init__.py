"""The imaging domain's own pages (the viewer), served under the web shell's look and policy."""
