"""The web shell: pages over HTTP, and the same pages driven in headless Chromium."""
