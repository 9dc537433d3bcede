#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Issue 9 item 7: an SN's images fail independently. The first image in the config cannot be
//! opened on the SN (its replica path is a plain file there); the second image must still be synced
//! and verified, checked by an independent walk, and the run must name only the first as failed.

mod net;

use model::config::{Clients, ImageSection};
use net::{assert_same_tree, fill, Rig, IMAGE_PATH};

#[test]
fn one_failed_image_does_not_stop_the_sns_other_images() {
    let rig = Rig::new(1, false);
    fill(&rig.source(), 10);
    let other_src = rig.path().join("src/other/rootimg");
    fill(&other_src, 10);
    rig.edit_config(|c| c.image.push(ImageSection::new("other", "other/rootimg").clients(Clients::One("*".into()))));
    // The obstacle: where the first image's replica must be, a regular file.
    let blocked = rig.agents[0].root.join(IMAGE_PATH);
    std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
    std::fs::write(&blocked, b"not a directory").unwrap();

    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 1, "{v}");
    let rows = v["replicas"].as_array().unwrap();
    let row = |img: &str| rows.iter().find(|r| r["image"] == img).unwrap_or_else(|| panic!("no row for {img}: {v}"));
    assert_eq!(row("compute")["matches"], false, "{v}");
    assert_eq!(row("other")["matches"], true, "the second image was not synced after the first failed: {v}");
    assert_same_tree(&other_src, &rig.agents[0].root.join("other/rootimg"));

    // verify, too, reports each image on its own.
    let (rc, v) = rig.hanfs_json(&["verify"]);
    assert_eq!(rc, 1, "{v}");
    let rows = v["replicas"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["image"] == "other" && r["matches"] == true), "{v}");

    // Once the obstacle is gone the next sync converges.
    std::fs::remove_file(&blocked).unwrap();
    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{v}");
    assert_same_tree(&rig.source(), &rig.replica(0));
}
