# mytypes.capnp — the out-of-tree plugin's own schema (README, "Structs of your own"): the
# install tests compile it with `capnp compile -oc++` into both the plugin and the host.
@0xcd4bc7d99217666a;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("mytypes");

struct Range {
  lo @0 :Int64;
  hi @1 :Int64;
}
