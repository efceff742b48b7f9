// libtorch keeps process-wide state (the default generator that dropout draws from, the intra-op thread count), and
// the trainer tests compare runs bit for bit, so this assembly's tests run one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
