//! Real services inside the namespaces: DNS servers and web servers, each logging what it
//! saw so scenarios can assert who talked to whom, from which address, over which interface.

pub mod dns;
pub mod web;
