"""The bundle: its contract (file names, manifest, golden keys, engine sidecars) and its reader."""
