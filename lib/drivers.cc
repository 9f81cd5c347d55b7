// The one registry table that names every driver: the drivers libblock is built with, in
// the order that decides probing ties. The core (lib/core) knows no driver; Registry::Builtin
// is declared there and provided here.
#include <string_view>

#include "core/registry.h"
#include "filters/blklogwrites/blklogwrites_driver.h"
#include "filters/preallocate/preallocate_driver.h"
#include "formats/bochs/bochs_probe.h"
#include "formats/cloop/cloop_probe.h"
#include "formats/dmg/dmg_probe.h"
#include "formats/luks/luks_probe.h"
#include "formats/parallels/parallels_probe.h"
#include "formats/qcow/qcow_probe.h"
#include "formats/qcow2/qcow2_check.h"
#include "formats/qcow2/qcow2_create.h"
#include "formats/qcow2/qcow2_driver.h"
#include "formats/qcow2/qcow2_probe.h"
#include "formats/qed/qed_probe.h"
#include "formats/raw/raw_driver.h"
#include "formats/vdi/vdi_probe.h"
#include "formats/vhdx/vhdx_probe.h"
#include "formats/vmdk/vmdk_probe.h"
#include "formats/vpc/vpc_probe.h"
#include "protocols/file/file_driver.h"
#include "protocols/null/null_driver.h"

namespace libblock {
namespace {

// Formats that libblock recognizes (so probing never mistakes them for raw, and raw's
// sector-0 guard protects against them) but cannot open yet: opening one fails with
// "Driver 'x' is not supported by this build of libblock".
constexpr Driver Recognized(std::string_view name,
                            int (*probe)(const uint8_t*, size_t, std::string_view)) {
  return Driver{.name = name, .kind = DriverKind::kFormat, .probe = probe};
}
const Driver kQed = Recognized("qed", qed::Probe);
const Driver kParallels = Recognized("parallels", parallels::Probe);
const Driver kVdi = Recognized("vdi", vdi::Probe);
const Driver kQcow = Recognized("qcow", qcow::Probe);
const Driver kVmdk = Recognized("vmdk", vmdk::Probe);
const Driver kVpc = Recognized("vpc", vpc::Probe);
const Driver kVhdx = Recognized("vhdx", vhdx::Probe);
const Driver kLuks = Recognized("luks", luks::Probe);
const Driver kBochs = Recognized("bochs", bochs::Probe);
const Driver kDmg = Recognized("dmg", dmg::Probe);
const Driver kCloop = Recognized("cloop", cloop::Probe);

// qcow2 (lib/formats/qcow2).
const Driver kQcow2 = {
    .name = "qcow2",
    .kind = DriverKind::kFormat,
    .options = &qcow2::kOptions,
    .create_options = &qcow2::kCreateSchema,
    .probe = qcow2::Probe,
    .instantiate = qcow2::Instantiate,
    .create = qcow2::Create,
    .check = qcow2::CheckImage,
    .measure = qcow2::Measure,
    .compresses = true,
};

}  // namespace

const Registry& Registry::Builtin() {
  // Formats are listed in the order qemu-img 7.2 resolves probe ties (checked against it on
  // crafted images): qed and parallels beat vdi, vdi beats the formats whose headers leave
  // its signature bytes free, dmg beats cloop. Raw is last.
  static const Registry registry({
      &file::kFileDriver,
      &file::kHostDeviceDriver,
      &null::kNullCoDriver,
      &null::kNullAioDriver,
      &kQed,
      &kParallels,
      &kVdi,
      &kQcow2,
      &kQcow,
      &kVmdk,
      &kVpc,
      &kVhdx,
      &kLuks,
      &kBochs,
      &kDmg,
      &kCloop,
      &raw::kDriver,
      &preallocate::kDriver,
      &blklogwrites::kDriver,
  });
  return registry;
}

}  // namespace libblock
