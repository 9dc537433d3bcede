//! Attribute lookup as `Table.pm` `getNodeAttribs` does it, over tables already read: enabled rows
//! only; the node's own row, else its groups in `nodelist.groups` order (first group with a value
//! wins); a value `""` counts as NULL and falls through to the groups (Table.pm getAttribs,
//! perl-xCAT/xCAT/Table.pm:3887-3891, keeps only values not matching `/^$/`); attributes named
//! in `site.hierarchicalattrs` are joined across the node and all its groups; finally the regex rules.
//! Pure.

use crate::rules::{self, RuleError};
use crate::table::{Row, Table, Tables};
use std::collections::BTreeMap;

/// Tables indexed for lookups.
pub struct Db<'a> {
    pub tables: &'a Tables,
    /// Enabled nodelist rows: node -> groups, in file order.
    pub nodes: Vec<(String, Vec<String>)>,
    groups: BTreeMap<String, Vec<String>>,
    /// Per node-keyed table: key -> first enabled row.
    index: BTreeMap<&'static str, BTreeMap<String, &'a Row>>,
    /// `site` key -> value (enabled rows).
    pub site: BTreeMap<String, Option<String>>,
    hierarchical: BTreeMap<String, String>,
}

/// A looked-up value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The raw value as stored.
    pub raw: String,
    /// The node or group whose row held it.
    pub from: String,
    /// `table.csv:17` or similar.
    pub location: String,
}

const NODE_KEYED: &[&str] = &["nodelist", "noderes", "servicenode", "statelite", "hosts", "nodetype", "nodehm"];

impl<'a> Db<'a> {
    pub fn new(tables: &'a Tables) -> Db<'a> {
        let mut index: BTreeMap<&'static str, BTreeMap<String, &'a Row>> = BTreeMap::new();
        for name in NODE_KEYED {
            let mut m = BTreeMap::new();
            if let Some(t) = tables.get(name) {
                for r in t.enabled_rows() {
                    if let Some(k) = t.get(r, "node") {
                        m.entry(k.to_string()).or_insert(r);
                    }
                }
            }
            index.insert(name, m);
        }
        let mut nodes = Vec::new();
        let mut groups = BTreeMap::new();
        if let Some(t) = tables.get("nodelist") {
            for r in t.enabled_rows() {
                let Some(n) = t.get(r, "node") else { continue };
                let g: Vec<String> = t
                    .get(r, "groups")
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if groups.insert(n.to_string(), g.clone()).is_none() {
                    nodes.push((n.to_string(), g));
                }
            }
        }
        let mut site = BTreeMap::new();
        if let Some(t) = tables.get("site") {
            for r in t.enabled_rows() {
                if let Some(k) = t.get(r, "key") {
                    site.entry(k.to_string()).or_insert_with(|| t.get(r, "value").map(str::to_string));
                }
            }
        }
        // site.hierarchicalattrs = "attr1:delim,attr2"  (TableUtils.pm getHierarchyAttrs)
        let mut hierarchical = BTreeMap::new();
        if let Some(Some(h)) = site.get("hierarchicalattrs") {
            for item in h.split(',') {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                let (a, d) = match item.split_once(':') {
                    Some((a, d)) if !d.trim().is_empty() => (a.trim(), d.trim()),
                    Some((a, _)) => (a.trim(), ","),
                    None => (item, ","),
                };
                hierarchical.insert(a.to_string(), d.to_string());
            }
        }
        Db { tables, nodes, groups, index, site, hierarchical }
    }

    pub fn table(&self, name: &str) -> Option<&'a Table> {
        self.tables.get(name)
    }

    pub fn is_node(&self, name: &str) -> bool {
        self.groups.contains_key(name)
    }

    pub fn groups_of(&self, node: &str) -> &[String] {
        self.groups.get(node).map(Vec::as_slice).unwrap_or(&[])
    }

    /// `site` value: `None` when the key is absent or NULL.
    pub fn site(&self, key: &str) -> Option<&str> {
        self.site.get(key).and_then(|v| v.as_deref())
    }

    /// The enabled row keyed exactly `key` in a node-keyed table.
    pub fn row(&self, table: &str, key: &str) -> Option<&'a Row> {
        self.index.get(table).and_then(|m| m.get(key)).copied()
    }

    /// The raw stored value for a node, before regex processing: node row, then groups.
    pub fn raw(&self, table: &str, node: &str, col: &str) -> Option<Found> {
        let t = self.table(table)?;
        t.col(col)?;
        let from_row = |key: &str| -> Option<Found> {
            let r = self.row(table, key)?;
            // Table.pm getAttribs (perl-xCAT/xCAT/Table.pm:3887-3891) drops values matching /^$/ as
            // if NULL, so an empty value falls through to the groups like NULL does.
            let v = t.get(r, col).filter(|v| !v.is_empty())?;
            Some(Found { raw: v.to_string(), from: key.to_string(), location: r.location.clone() })
        };
        if let Some(delim) = self.hierarchical.get(col) {
            let mut vals: Vec<Found> = Vec::new();
            for key in std::iter::once(node).chain(self.groups_of(node).iter().map(String::as_str)) {
                if let Some(f) = from_row(key) {
                    vals.push(f);
                }
            }
            let first = vals.first()?.clone();
            let joined: Vec<&str> = vals.iter().map(|f| f.raw.as_str()).filter(|s| !s.is_empty()).collect();
            return Some(Found { raw: joined.join(delim), ..first });
        }
        if let Some(f) = from_row(node) {
            return Some(f);
        }
        self.groups_of(node).iter().find_map(|g| from_row(g))
    }

    /// `getNodeAttribs(node, [col])`: the value a node gets, `Ok(None)` when it has none.
    pub fn attr(&self, table: &str, node: &str, col: &str) -> Result<Option<String>, AttrError> {
        let Some(f) = self.raw(table, node, col) else { return Ok(None) };
        rules::trans_regex(node, &f.raw).map_err(|e| AttrError { found: f, error: e })
    }

    /// Like [`Db::attr`], but a rule failure becomes `None` and is handed to `report`.
    pub fn attr_or_report(
        &self,
        table: &str,
        node: &str,
        col: &str,
        report: &mut dyn FnMut(&AttrError),
    ) -> Option<String> {
        match self.attr(table, node, col) {
            Ok(v) => v,
            Err(e) => {
                report(&e);
                None
            }
        }
    }
}

/// A rule that failed for a node, with the row that held the value.
#[derive(Debug, Clone)]
pub struct AttrError {
    pub found: Found,
    pub error: RuleError,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tabdump;

    fn tables(list: &[(&str, &str)]) -> Tables {
        let mut t = Tables::default();
        for (name, text) in list {
            t.tables.insert(name.to_string(), tabdump::parse(name, &format!("{name}.csv"), text).unwrap());
        }
        t
    }

    #[test]
    fn node_row_then_groups_and_empty_string_falls_through() {
        let t = tables(&[
            (
                "nodelist",
                "#node,groups,comments,disable\n\"cn1\",\"rack1,compute\",,\n\"cn2\",\"compute\",,\n\"cn3\",\"rack1,compute\",,\n\"cn4\",\"compute\",,\"1\"\n",
            ),
            (
                "noderes",
                "#node,servicenode,xcatmaster,comments,disable\n\"compute\",\"sn9\",\"|cn(\\d+)|10.0.0.($1)|\",,\n\"rack1\",\"sn1,sn2\",,,\n\"cn3\",\"\",,,\n\"cn2\",\"snX\",,,\"yes\"\n",
            ),
        ]);
        let db = Db::new(&t);
        assert_eq!(db.nodes.len(), 3, "cn4 is disabled");
        assert_eq!(db.attr("noderes", "cn1", "servicenode").unwrap().as_deref(), Some("sn1,sn2"));
        // cn2's own row is disabled: the group's value.
        assert_eq!(db.attr("noderes", "cn2", "servicenode").unwrap().as_deref(), Some("sn9"));
        // "" on the node's row is no value: the groups are consulted as for NULL (Table.pm:3890).
        assert_eq!(db.attr("noderes", "cn3", "servicenode").unwrap().as_deref(), Some("sn1,sn2"));
        // NULL on the node's row: groups are consulted.
        assert_eq!(db.attr("noderes", "cn3", "xcatmaster").unwrap().as_deref(), Some("10.0.0.3"));
        assert_eq!(db.raw("noderes", "cn3", "xcatmaster").unwrap().from, "compute");
    }

    #[test]
    fn hierarchical_attrs_join() {
        let t = tables(&[
            ("site", "#key,value,comments,disable\n\"hierarchicalattrs\",\"servicenode\",,\n"),
            ("nodelist", "#node,groups,comments,disable\n\"cn1\",\"a,b\",,\n"),
            ("noderes", "#node,servicenode,comments,disable\n\"cn1\",\"sn1\",,\n\"b\",\"sn3\",,\n\"a\",\"sn2\",,\n"),
        ]);
        let db = Db::new(&t);
        assert_eq!(db.attr("noderes", "cn1", "servicenode").unwrap().as_deref(), Some("sn1,sn2,sn3"));
    }
}
