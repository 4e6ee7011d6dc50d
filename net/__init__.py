"""What every borednet program does on the network and on disk: the request link, the
ROUTER server and its gate, serving until stopped, the read-only HTTP server, one-shot
asks, and key, pin and atomic files. Built on protocol/ (the wire, pure) alone."""
