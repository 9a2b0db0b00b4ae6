"""Node agent tests with real effects: root, nftables, tc and network namespaces."""
