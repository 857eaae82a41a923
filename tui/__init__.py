"""The operator's dashboard (Textual): reads engine snapshots, sends control changes."""
