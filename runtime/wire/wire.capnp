# wire.capnp — the protocol between a plugpool host and its worker processes.
#
# This file is the specification. It only ever grows: new fields take new ordinals, no field
# is renamed to mean something else, no ordinal is reused.
#
# ## Transport and framing
#
# Host and worker talk over one connected stream (today: a SOCK_STREAM socketpair whose worker
# end is the worker's file descriptor 3). Each direction is a sequence of Cap'n Proto messages
# in the standard unpacked stream framing: a segment table (segment count minus one, then each
# segment's size in words, as little-endian uint32, padded to 8 bytes) followed by the
# segments. Nothing else is ever written on the stream.
#
# Both sides treat the other as untrusted. A reader:
#   - parses the segment table first and rejects a message whose declared size exceeds its
#     cap *before* allocating (the cap is Setup.maxMessageWords, chosen by the host);
#   - decodes with explicit capnp::ReaderOptions: nesting limit 64, traversal limit 8 times
#     the message's own size (so no message can cost more than 8 reads of itself);
#   - treats a clean end of stream at a message boundary as "the peer is gone" and anything
#     else (EOF inside a message, a malformed message, a message that breaks the rules below)
#     as a protocol error. A worker that sees a protocol error writes a line to stderr and
#     exits with status 70; a host that sees one kills that worker and fails its chunks.
#
# ## Shared segments
#
# Large segments need not travel on the stream. With Setup the host may pass two descriptors
# (SCM_RIGHTS, on the same write as Setup's first bytes) and set Setup.sharedMemory: two
# memfds sealed against shrinking and growing, each a "region" of one 4096-byte header page
# followed by data. The first is the host's region (the host writes, the worker reads), the
# second the worker's (the other way). A worker that maps both says so in
# Hello.sharedMemory; only then may either side use them, and a side that did not agree
# treats the frames below as malformed.
#
# A frame with shared segments sets bit 31 of its first word (the segment count minus one).
# The segment table is followed by one little-endian UInt64 per segment: 2^64-1 for a
# segment whose words follow on the stream as usual (in order, after the locations), or the
# word offset, from the start of the sender's region's data, of a segment that is there
# instead. Shared segments count against maxMessageWords like the others; one outside the
# region is a protocol error.
#
# The header's first 32-bit word, used with atomic operations only, is the region's state:
# 0 free, 1 held by a message, 2 being trimmed (the host returns its pages to the system).
# The sender changes 0 to 1 (compare-and-swap) before it writes a message's segments, so a
# region holds one message at a time; the receiver stores 0 once it no longer reads that
# message: the worker after the chunk's tasks have run (before it sends ChunkDone), the host
# once the caller has decoded the results. A sender that finds its region held sends on the
# stream instead; nobody ever waits for a region.
#
# ## The reply log
#
# With the two regions the host may pass a third descriptor, the worker's reply log (and set
# Setup.replyLog): a sealed memfd of the same shape, one 4096-byte header page and data, that
# the worker writes and the host reads once the worker is gone. A worker that maps it says so
# in Hello.replyLog; only then is it used. It makes a worker's death cost only the item that
# was running: the items of its chunk that it had finished keep their results.
#
# The worker builds each ChunkDone in the log as it runs the chunk: the message's first
# segment is the log's data from its start, zeroed, so the results list is there from the
# start and item i's result is in it once item i has run. The header holds UInt64 words,
# written by the worker with atomic stores (release order), at these word indexes:
#   1 run       the Run.id whose ChunkDone is being built; 0 while none is
#   2 items     that Run's number of items
#   3 running   the index of the item being run (`items` once all have run)
#   4 finished  how many items, from the first, have run and are readable in the message
#   5 errors    how many elements of ChunkDone.errors are written (the list may be longer)
#   6 started   CLOCK_MONOTONIC nanoseconds at which `running` began, if Run.itemStartTimes
#               asked for it; 0 otherwise
#   7 words     the size of the first segment, in words
# `finished` stops growing once the message needs a segment outside the log: the items after
# that are run again if the worker dies. Once the reply has been written to the stream, the
# worker stores 0 in `run` and zeroes what the message used.
#
# Finished replies. The data's second half is a ring of finished replies, which saves their
# system calls: a worker may append a reply there instead of writing it to the stream (a
# frame with every segment inline, of at most 8192 words), as a record of one UInt64, the
# frame's size in words, followed by the frame; a record that would not fit before the ring's
# end is preceded by the word 2^64-1 ("go on at the start") in the room left. Header words:
#   7 head      words ever appended (the worker stores it once the record is written)
#   8 tail      words ever taken (the host stores it once it has copied the record out)
#   9 sleeping  1 while the host may be asleep: a worker that appends then changes it to 0
#               and sends `logged` on the stream, which wakes the host
# The host sets `sleeping` before it waits and then looks at the ring once more; it takes
# replies from the ring and the stream in the order of their runs (each reply still answers
# the oldest unanswered run: one in the ring that answers a later run waits for the replies
# before it, which come on the stream). A record that breaks these rules, or a frame that is
# not one whole frame within the caps, is a protocol error like a malformed message.
#
# A host whose worker died reads the log if `run` names the oldest unanswered chunk: the first
# `finished` results and the first `errors` errors (each index below `finished`, increasing),
# with the same checks and limits as a ChunkDone from the stream, the segment bounded by the
# log's data. A log that fails them costs the whole chunk, as if there were none. While the
# worker lives the host reads only `run`, `running` and `started`, to time each item.
#
# ## Conversation
#
#   host → worker   Setup                 exactly once, first
#   worker → host   Hello                 exactly once, after loading every plugin
#   host → worker   Run, Run, Run …       any number, pipelined: the host does not wait for
#                                         one chunk's reply before sending the next
#   worker → host   ChunkDone …           one per Run, in the order the Runs were received
#   host closes its end                   the worker finishes nothing more and exits 0
#   worker → host   Crash                 at most once, last: the worker is dying of a fatal
#                                         signal (a crashed task) and says where
#
# ## Values
#
# Task arguments and results are "tuple structs" (sdk/include/plugpool/abi.h, convention 5):
# one struct per call whose data section holds the scalar values (one 64-bit word each) and
# whose pointer section holds the rest. The types are fixed at bind time by comparing the
# host's expected type names with the plugin's manifest, so no type tags travel per item.

@0x9da198890c31be7a;

using Cxx = import "/capnp/c++.capnp";
using Schema = import "/capnp/schema.capnp";
$Cxx.namespace("plugpool::wire");

const protocolVersion :UInt32 = 1;
# Bumped only if a change cannot be expressed by adding fields. Setup and Hello carry it and
# each side refuses a peer with a different one.

struct HostMessage {
  union {
    setup @0 :Setup;
    run @1 :Run;
  }
}

struct WorkerMessage {
  union {
    hello @0 :Hello;
    chunkDone @1 :ChunkDone;
    crash @2 :Crash;
    logged @3 :Void;
    # A wake-up: replies wait in the reply log's ring ("The reply log"). The host takes them.
  }
}

struct Setup {
  protocolVersion @0 :UInt32;

  plugins @1 :List(Text);
  # Absolute paths of the plugin shared libraries to load, in order. Tasks are later addressed
  # by (index in this list, index in that plugin's manifest).

  maxMessageWords @2 :UInt64;
  # The largest message, in 8-byte words, either side may send. The worker applies it to
  # what it reads and must not send a larger reply (an item whose result would not fit fails
  # on its own instead).

  limits @3 :Limits;
  # Resource limits the worker applies to itself (setrlimit) before loading any plugin.

  sharedMemory @4 :Bool;
  # The two regions of "Shared segments" came with this message.

  replyLog @5 :Bool;
  # With sharedMemory: a third descriptor, the reply log ("The reply log"), came after them.
}

struct Limits {
  # Each 0 means "leave as inherited". A limit the worker cannot set is a load error.

  addressSpaceBytes @0 :UInt64;
  # RLIMIT_AS: allocations past it fail (a C++ task sees std::bad_alloc).

  cpuSeconds @1 :UInt64;
  # RLIMIT_CPU: CPU time of the whole worker process; past it the kernel sends SIGXCPU, which
  # ends the worker (the host reports WorkerCrashed with that signal).

  openFiles @2 :UInt64;
  # RLIMIT_NOFILE: descriptors the worker may hold; past it open() fails with EMFILE.
}

struct Hello {
  protocolVersion @0 :UInt32;
  pid @1 :Int32;
  # The worker's own process id, as it sees it.

  union {
    plugins @2 :List(PluginManifest);
    # Every plugin in Setup.plugins loaded and passed the ABI check; one manifest each, in
    # the same order.

    loadError @3 :LoadError;
    # A plugin could not be used. The worker exits right after sending this.
  }

  sharedMemory @4 :Bool;
  # The worker mapped both regions Setup passed: from now on frames may use shared segments
  # both ways.

  replyLog @5 :Bool;
  # The worker mapped the reply log Setup passed and builds its replies there.
}

struct LoadError {
  plugin @0 :Text;
  # The path from Setup.plugins.

  message @1 :Text;
  # Why, for a human: the loader's message (dlerror text), a missing symbol, an ABI or Cap'n
  # Proto version mismatch, a duplicate plugin name.
}

struct PluginManifest {
  name @0 :Text;
  # The plugin's own name (PLUGPOOL_PLUGIN's first argument).

  path @1 :Text;
  abiVersion @2 :UInt32;
  tasks @3 :List(TaskManifest);

  schemaNodes @4 :List(Schema.Node);
  # The schema nodes of the struct and enum types the tasks' type names mention ("struct
  # X@0x…"), with every node those need, each once (sdk/include/plugpool/abi.h, convention 8).
  # Empty if the plugin ships none. Hosts that know their types at compile time ignore them;
  # a host that converts values at run time (the plugpool command line) loads them into a
  # capnp::SchemaLoader, which validates each node: a node that does not validate makes
  # those values unconvertible, never the host unsafe.
}

struct TaskManifest {
  name @0 :Text;
  doc @1 :Text;
  argTypes @2 :List(Text);
  # Canonical type names (sdk/include/plugpool/codec.h), one per argument.

  resultType @3 :Text;
}

struct Run {
  id @0 :UInt64;
  # Chosen by the host, unique among the chunks it has in flight on this worker. Echoed in
  # ChunkDone.id.

  plugin @1 :UInt32;
  task @2 :UInt32;
  # Indexes into Hello.plugins and that plugin's tasks. Out of range is a protocol error.

  items @3 :AnyPointer;
  # A List(AnyStruct): one argument tuple struct per call, in order. Anything else (not a
  # list, not a struct list) is a protocol error. An empty list is allowed.

  itemStartTimes @4 :Bool;
  # Write each item's start time in the reply log (`started`): the host times each item.
}

struct ChunkDone {
  id @0 :UInt64;
  # The Run.id this answers.

  results @1 :AnyPointer;
  # A List(AnyStruct) with exactly as many elements as Run.items: element i is the result
  # tuple struct of call i. An element whose index appears in `errors` holds nothing
  # meaningful.

  errors @2 :List(ItemError);
  # The calls that failed, in increasing index order, each index at most once. Sparse, so a
  # chunk with no failures costs nothing here.

  elapsedNs @3 :UInt64;
  # Wall time the worker spent running the chunk's calls, in nanoseconds (decoding the Run
  # and encoding this reply excluded). The host sizes later chunks of a stream from it; it is
  # a hint, never trusted for correctness.
}

struct ItemError {
  index @0 :UInt32;
  # Index into Run.items.

  type @1 :Text;
  # The demangled C++ type of what the task threw, e.g. "std::runtime_error", or
  # "plugpool::DecodeError" when the arguments could not be decoded.

  message @2 :Text;
  # what() of the exception, or a description.
}

struct Crash {
  # Written by the worker's fatal-signal handler (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT)
  # with async-signal-safe steps only, after the replies it had finished and before it dies
  # of that signal. The host takes it as text for a human and nothing more: it checks the
  # sizes, never follows what the text names, and reports the crash only once the worker
  # has died of a signal (a Crash from a worker that lives on, or that then exits, changes
  # nothing). Nothing follows it on the stream.

  runId @0 :UInt64;
  # The Run being run, or 0 if none was.

  item @1 :UInt32;
  # The index in that Run's items of the call that was running; 0xffffffff if unknown (a
  # plugin that takes whole chunks, abi.h convention 9).

  signal @2 :Int32;
  address @3 :UInt64;
  # The faulting address the kernel gave (siginfo's si_addr), for SIGSEGV, SIGBUS, SIGFPE and
  # SIGILL; 0 otherwise.

  frames @4 :List(StackFrame);
  # The crashed thread's stack, innermost first, starting at the instruction that faulted
  # (or, for a raised signal, inside the call that raised it). At most 64.
}

struct StackFrame {
  pc @0 :UInt64;
  # The program counter, in the worker's address space (meaningless to the host).

  function @1 :Text;
  # The function's linkage name (mangled for C++), from debug information or, without it,
  # the symbol table; empty if unknown. An inlined call is a frame of its own, with the pc of
  # the function it was inlined into. At most 1024 bytes.

  file @2 :Text;
  line @3 :UInt32;
  # The source position, where the code has debug information; empty and 0 otherwise. At
  # most 1024 bytes.
}
