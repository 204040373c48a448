// image_features — the seed's real-world job through the embedded API: the imagefeatures
// plugin's `features` task over every file of a folder, streamed through Pool::imap, then a
// summary. A file that fails (not an image, truncated, unreadable) is reported on its own
// line and counted; the others go on.
//
//   $ build/examples/make_images /tmp/images 3000
//   $ build/examples/image_features /tmp/images [WORKERS]
//   files: 3000
//   decoded: 3000 (2135 PNG, 865 JPEG)
//   failed: 0
//   mean size: 328.7 x 324.2 pixels
//   mean brightness: 126.2
//   time: 1.00s with 2 workers (3015 images/s)
//
// Each failed file prints one line before the summary, in file-name order:
//   failed: imagefeatures::ImageError: /tmp/images/x.png: not a PNG or JPEG file
//
// WORKERS defaults to 0, one per core. Files are every regular file directly in the folder,
// sorted by name.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <plugpool/pool.h>

#include "imagefeatures.capnp.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::cerr << "usage: image_features DIR [WORKERS]\n";
    return 2;
  }
  std::vector<std::string> paths;
  for (const auto& entry : fs::directory_iterator(argv[1])) {
    if (entry.is_regular_file()) paths.push_back(entry.path().string());
  }
  std::sort(paths.begin(), paths.end());
  const int workers = argc == 3 ? std::stoi(argv[2]) : 0;
  if (workers < 0) {
    std::cerr << "image_features: WORKERS must be 1 or more, or 0 for one per core\n";
    return 2;
  }

  plugpool::Pool pool(workers, {"imagefeatures"});
  auto features = pool.task<imagefeatures::ImageFeatures(std::string)>("imagefeatures", "features");

  std::size_t decoded = 0, pngs = 0, failed = 0;
  double width = 0, height = 0, brightness = 0;
  auto start = std::chrono::steady_clock::now();
  auto results = pool.imap(features, paths);
  for (;;) {
    try {
      auto result = results.next();
      if (!result) break;
      imagefeatures::ImageFeatures::Reader image = result->get();
      ++decoded;
      pngs += image.getFormat() == "png" ? 1 : 0;
      width += image.getWidth();
      height += image.getHeight();
      brightness += image.getBrightness();
    } catch (const plugpool::TaskError& e) {
      ++failed;
      std::cout << "failed: " << e.remoteType() << ": " << e.remoteMessage() << "\n";
    } catch (const plugpool::Error& e) {  // e.g. WorkerCrashed: that file only
      ++failed;
      std::cout << "failed: " << e.what() << "\n";
    }
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  double n = decoded != 0 ? static_cast<double>(decoded) : 1;
  std::printf("files: %zu\n", paths.size());
  std::printf("decoded: %zu (%zu PNG, %zu JPEG)\n", decoded, pngs, decoded - pngs);
  std::printf("failed: %zu\n", failed);
  std::printf("mean size: %.1f x %.1f pixels\n", width / n, height / n);
  std::printf("mean brightness: %.1f\n", brightness / n);
  std::printf("time: %.2fs with %u worker%s (%.0f images/s)\n", seconds, pool.workers(),
              pool.workers() == 1 ? "" : "s", static_cast<double>(paths.size()) / seconds);
  return 0;
}
