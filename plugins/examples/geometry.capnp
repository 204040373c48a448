# geometry.capnp — the example plugin's own schema: tasks can take and return structs of
# their author's schema. Hosts that call these tasks include the generated header too.
@0xc561a7369792f846;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("geometry");

struct Point {
  x @0 :Float64;
  y @1 :Float64;
}

struct Polygon {
  name @0 :Text;
  points @1 :List(Point);
}

struct PolygonStats {
  name @0 :Text;
  vertices @1 :UInt32;
  area @2 :Float64;
  perimeter @3 :Float64;
  centroid @4 :Point;
}
