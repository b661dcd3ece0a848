"""Files in and out: input discovery, preprocessing, per-image output folders and manifests."""
