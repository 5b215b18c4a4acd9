"""The build engine: the stage graph and its keys, the content-addressed cache, the lock, plan and build."""
