//! Running the game without a display: whether a Vulkan driver is there for offscreen
//! rendering (Mesa's lavapipe where there is no GPU), and a command that cannot find a
//! display even when the developer's session has one.

use std::process::Command;

/// Whether a Vulkan driver is installed (an ICD file in one of the loader's folders).
pub fn vulkan_driver_installed() -> bool {
    ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .any(|dir| std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()))
}

/// Removes `DISPLAY` and `WAYLAND_DISPLAY` from `command`'s environment.
pub fn without_display(command: &mut Command) -> &mut Command {
    command.env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY")
}
